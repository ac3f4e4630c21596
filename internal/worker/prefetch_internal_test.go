package worker

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// failingAfter gives its bytes, then err instead of the end.
type failingAfter struct {
	r   io.Reader
	err error
}

func (f *failingAfter) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

// The last byte of a prefetched NAR is held back until the upload is
// accepted: a NAR whose upload fails reaches the machine one byte short.
func TestLastByteHeldUntilAccepted(t *testing.T) {
	data := bytes.Repeat([]byte("nar bytes "), 1000)
	read := func(src io.Reader) ([]byte, error) {
		held := io.MultiReader(io.LimitReader(src, int64(len(data))-1), &lastByte{r: src})
		return io.ReadAll(held)
	}
	got, err := read(bytes.NewReader(data))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("accepted upload: %d bytes, %v", len(got), err)
	}
	refused := errors.New("hash mismatch")
	got, err = read(&failingAfter{r: bytes.NewReader(data), err: refused})
	if !errors.Is(err, refused) || len(got) != len(data)-1 {
		t.Fatalf("refused upload: %d of %d bytes passed, %v", len(got), len(data), err)
	}
	got, err = read(bytes.NewReader(append(data, 'x')))
	if err == nil || len(got) != len(data)-1 {
		t.Fatalf("overlong upload: %d bytes, %v", len(got), err)
	}
}
