package account

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Key is an SSH public key that authenticates as an account.
type Key struct {
	Account     string    `json:"account"`
	Fingerprint string    `json:"fingerprint"` // SHA256:...
	Type        string    `json:"type"`
	Key         string    `json:"key"` // authorized_keys form, without comment
	Comment     string    `json:"comment"`
	Added       time.Time `json:"added"`
}

// ParseKeys parses OpenSSH public keys, one per line as in an
// authorized_keys file or a .pub file; blank lines and # comments are
// skipped. At least one key is required.
func ParseKeys(data []byte) ([]Key, error) {
	var keys []Key
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		pk, comment, _, rest, err := ssh.ParseAuthorizedKey([]byte(text))
		if err != nil {
			return nil, fmt.Errorf("line %d: not an OpenSSH public key (expected e.g. ssh-ed25519 AAAA... comment): %w", line, err)
		}
		if len(bytes.TrimSpace(rest)) > 0 {
			return nil, fmt.Errorf("line %d: more than one key on a line", line)
		}
		keys = append(keys, Key{
			Fingerprint: ssh.FingerprintSHA256(pk),
			Type:        pk.Type(),
			Key:         strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk))),
			Comment:     comment,
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading keys: %w", err)
	}
	if len(keys) == 0 {
		return nil, errors.New("no public key given")
	}
	return keys, nil
}

// AddKeys makes the keys in data (see ParseKeys) authenticate as account:
// all of them, or none if one is bad or belongs to an account already.
func (s *Service) AddKeys(ctx context.Context, account string, data []byte) ([]Key, error) {
	keys, err := ParseKeys(data)
	if err != nil {
		return nil, err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("adding keys: %w", err)
	}
	defer tx.Rollback()
	if err := exists(ctx, tx, account); err != nil {
		return nil, err
	}
	now := s.now()
	for i := range keys {
		k := &keys[i]
		k.Account, k.Added = account, now
		var owner string
		err := tx.QueryRowContext(ctx, `SELECT account FROM keys WHERE fingerprint = ?`, k.Fingerprint).Scan(&owner)
		if err == nil {
			return nil, fmt.Errorf("key %s %w for account %s; a key belongs to one account (remove it there first)", k.Fingerprint, ErrExists, owner)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("adding key %s: %w", k.Fingerprint, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO keys (fingerprint, account, key, comment, added) VALUES (?, ?, ?, ?, ?)`,
			k.Fingerprint, account, k.Key, k.Comment, now.Unix()); err != nil {
			return nil, fmt.Errorf("adding key %s: %w", k.Fingerprint, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("adding keys: %w", err)
	}
	return keys, nil
}

// Keys lists the keys of account, or of every account if it is "".
func (s *Service) Keys(ctx context.Context, account string) ([]Key, error) {
	q := `SELECT fingerprint, account, key, comment, added FROM keys`
	var args []any
	if account != "" {
		if err := exists(ctx, s.db, account); err != nil {
			return nil, err
		}
		q += ` WHERE account = ?`
		args = append(args, account)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY account, added, fingerprint`, args...)
	if err != nil {
		return nil, fmt.Errorf("listing keys: %w", err)
	}
	defer rows.Close()
	out := []Key{}
	for rows.Next() {
		var k Key
		var added int64
		if err := rows.Scan(&k.Fingerprint, &k.Account, &k.Key, &k.Comment, &added); err != nil {
			return nil, fmt.Errorf("listing keys: %w", err)
		}
		k.Added = time.Unix(added, 0)
		k.Type, _, _ = strings.Cut(k.Key, " ")
		out = append(out, k)
	}
	return out, rows.Err()
}

// RemoveKey removes one of account's keys, named by its SHA256
// fingerprint. New connections with it are refused at once; connections
// open already go on.
func (s *Service) RemoveKey(ctx context.Context, account, fingerprint string) error {
	if !strings.HasPrefix(fingerprint, "SHA256:") {
		return fmt.Errorf("invalid fingerprint %q: want SHA256:... as `nixfarm keys list` or ssh-keygen -l shows it", fingerprint)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("removing key: %w", err)
	}
	defer tx.Rollback()
	if err := exists(ctx, tx, account); err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM keys WHERE account = ? AND fingerprint = ?`, account, fingerprint)
	if err != nil {
		return fmt.Errorf("removing key %s: %w", fingerprint, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("account %s has no key %s (see nixfarm keys list --account %s)", account, fingerprint, account)
	}
	return tx.Commit()
}

// LookupKey finds the account a public key authenticates as. It reads the
// database each time, so a removed key stops working at once.
func (s *Service) LookupKey(ctx context.Context, key ssh.PublicKey) (string, bool, error) {
	var account, text string
	err := s.db.QueryRowContext(ctx, `SELECT account, key FROM keys WHERE fingerprint = ?`, ssh.FingerprintSHA256(key)).Scan(&account, &text)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("looking up key: %w", err)
	}
	// The fingerprint found the row; the key itself must match too.
	stored, _, _, _, err := ssh.ParseAuthorizedKey([]byte(text))
	if err != nil || !bytes.Equal(stored.Marshal(), key.Marshal()) {
		return "", false, nil
	}
	return account, true, nil
}
