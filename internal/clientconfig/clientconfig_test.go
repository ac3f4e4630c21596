package clientconfig_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// A server that authenticates nobody still shows its host key, which is
// all FetchHostKey needs.
func TestFetchHostKey(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(ssh.ConnMetadata, ssh.PublicKey) (*ssh.Permissions, error) {
		return nil, errors.New("nobody is authorized")
	}}
	cfg.AddHostKey(signer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				ssh.NewServerConn(c, cfg)
			}()
		}
	}()
	k, err := clientconfig.FetchHostKey(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.Marshal(), signer.PublicKey().Marshal()) {
		t.Errorf("got %s, want %s", ssh.FingerprintSHA256(k), ssh.FingerprintSHA256(signer.PublicKey()))
	}
	// Nothing listening: an error naming the address.
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln2.Addr().String()
	ln2.Close()
	if _, err := clientconfig.FetchHostKey(context.Background(), addr); err == nil || !strings.Contains(err.Error(), addr) {
		t.Errorf("nothing listening: %v", err)
	}
}

func TestPoolAndLines(t *testing.T) {
	workers := []scheduler.WorkerInfo{
		{Name: "local", State: "busy", Capabilities: worker.Capabilities{Systems: []string{"x86_64-linux", "i686-linux"}, SupportedFeatures: []string{"kvm", "big-parallel"}, MaxJobs: 4},
			Running: make([]scheduler.RunningBuild, 3)},
		{Name: "arm", State: "idle", Capabilities: worker.Capabilities{Systems: []string{"aarch64-linux"}, SupportedFeatures: []string{"big-parallel"}, MaxJobs: 2}},
		{Name: "sick", State: "quarantined", Capabilities: worker.Capabilities{Systems: []string{"riscv64-linux"}, MaxJobs: 8}},
		// A hostile agent's names would become lines of the client's nix.conf.
		{Name: "evil", State: "idle", Capabilities: worker.Capabilities{Systems: []string{"x86_64-linux\npost-build-hook = /tmp/x"}, MaxJobs: 8}},
		{Name: "evil2", State: "idle", Capabilities: worker.Capabilities{Systems: []string{"x86_64-linux"}, SupportedFeatures: []string{"kvm extra"}, MaxJobs: 8}},
	}
	p := clientconfig.PoolOf(workers)
	if strings.Join(p.Systems, ",") != "aarch64-linux,i686-linux,x86_64-linux" || strings.Join(p.Features, ",") != "big-parallel,kvm" ||
		p.Slots != 6 || p.Free != 3 || p.Workers != 2 || len(p.Mandatory) != 0 || p.Refused != 2 {
		t.Fatalf("pool %+v", p)
	}
	c := clientconfig.Client{Alias: "nixfarm", Host: "farm.example.org", Port: "2222", KeyFile: "/root/.ssh/nixfarm_ed25519", HostKey: "c3NoLWVk"}
	if got, want := clientconfig.MachinesLine(c, p), "ssh-ng://nixfarm aarch64-linux /root/.ssh/nixfarm_ed25519 2 1 big-parallel - c3NoLWVk ; ssh-ng://nixfarm i686-linux,x86_64-linux /root/.ssh/nixfarm_ed25519 4 1 big-parallel,kvm - c3NoLWVk"; got != want {
		t.Errorf("machines line\n got %s\nwant %s", got, want)
	}
	block := clientconfig.SSHConfig(c)
	for _, want := range []string{"Host nixfarm\n", "HostName farm.example.org\n", "Port 2222\n", "ServerAliveInterval 15\n", "BatchMode yes\n", "HostKeyAlias nixfarm\n"} {
		if !strings.Contains(block, want) {
			t.Errorf("ssh config lacks %q:\n%s", want, block)
		}
	}
}

func TestPrintable(t *testing.T) {
	// ESC, BEL, a C1 CSI, and a raw byte that is no UTF-8 at all (which
	// becomes U+FFFD, printable and harmless).
	in := "worker\x1b]0;owned\x07 x86_64-linux\u009b2J \x9b\nnext\tline é"
	want := "worker?]0;owned? x86_64-linux?2J \ufffd\nnext\tline é"
	if got := clientconfig.Printable(in); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
