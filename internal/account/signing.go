package account

import (
	"context"
	"strconv"
	"strings"
	"sync"

	"github.com/nixfarm/nixfarm/internal/signature"
)

// Each account has a signing key of its own, derived from the farm's:
// it signs, in the account's view, the outputs the farm built for it
// from derivations the farm could not check (a BasicDerivation sent by a
// remote builder's client names whatever output paths it likes, so the
// farm's own key must not vouch for them). The account's key vouches
// only for what the account itself asked for, so an account can trust
// its own key on every machine it uses (`nixfarm whoami` shows it)
// without trusting anyone else's builds.

// SigningKeyName names account's key in signatures ("nixfarm-alice-1").
// The name is a label; characters Nix uses as separators become '-'.
func SigningKeyName(account string) string {
	return "nixfarm-" + strings.Map(func(r rune) rune {
		if r == ':' || r == ' ' || r == ',' || r == ';' {
			return '-'
		}
		return r
	}, account) + "-1"
}

// SigningKey derives account's signing key from the farm's. removals is
// how many times an account of that name was removed (Service.Removals):
// one made again under an old name, perhaps for someone else, gets a key
// of its own, while an account keeps its key when it moves from
// authorized_keys into the accounts table.
func SigningKey(farm signature.SecretKey, account string, removals int64) signature.SecretKey {
	label := "nixfarm account signing key\x00" + account
	if removals != 0 {
		label += "\x00" + strconv.FormatInt(removals, 10)
	}
	return farm.Derive(SigningKeyName(account), label)
}

// SigningKeys derives accounts' keys once each.
type SigningKeys struct {
	Farm     signature.SecretKey
	Accounts *Service // when accounts were created; nil: never
	keys     sync.Map // "account\x00removals" → *signature.SecretKey
}

// For returns account's key.
func (k *SigningKeys) For(account string) *signature.SecretKey {
	var removals int64
	if k.Accounts != nil {
		removals = k.Accounts.Removals(context.Background(), account)
	}
	id := account + "\x00" + strconv.FormatInt(removals, 10)
	if v, ok := k.keys.Load(id); ok {
		return v.(*signature.SecretKey)
	}
	key := SigningKey(k.Farm, account, removals)
	v, _ := k.keys.LoadOrStore(id, &key)
	return v.(*signature.SecretKey)
}
