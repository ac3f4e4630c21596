#!/bin/sh
# mktree.sh DIR creates the known-answer test trees in DIR, which must exist.
#
# gen.sh runs it to build the trees that real Nix dumps into the .nar
# fixtures, and the Go tests run it to recreate the same trees, because git
# keeps neither empty directories nor exact modes. Keep it POSIX sh and
# deterministic: every mode is set explicitly and non-ASCII names are
# written as octal escapes, so neither the umask nor the locale matters.
set -eu
cd "$1"
umask 022

# tree: every node type and the corner cases of the format.
mkdir tree
cd tree
printf 'hello\n' >hello
: >empty
printf '#!/bin/sh\necho hi\n' >exec.sh
chmod 0755 exec.sh
: >empty-exec
chmod 0700 empty-exec
# Only the owner's x bit (S_IXUSR) makes a file executable in a NAR.
printf 'group may execute\n' >group-x
chmod 0654 group-x
printf 'others may execute\n' >other-x
chmod 0645 other-x
printf 'owner only\n' >owner-x
chmod 0744 owner-x
# Contents whose lengths need 1, 0 and 7 bytes of padding.
printf '1234567' >pad7
printf '12345678' >pad8
printf '123456789' >pad9
printf '\000\001\002\377\376 binary\000\n' >binary
seq 1 5000 >big
# Symlinks: relative, absolute, dangling, to a directory, upwards, odd.
ln -s hello rel
ln -s /etc/hosts abs
ln -s does/not/exist dangling
ln -s sub dirlink
ln -s "$(printf 't\303\244rget with spaces')" fancy-link
ln -s "$(printf 'x%.0s' $(seq 1 300))" long-link
mkdir emptydir
mkdir -p sub/deeper/deepest
printf 'nested\n' >sub/deeper/file
ln -s ../../hello sub/deeper/up
mkdir -p deep/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17/18/19/20
printf 'bottom\n' >deep/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17/18/19/20/file
# Names whose byte order differs from locale, numeric or whole-path order:
# the directory "a" sorts before "a-b", "a.b" and "a_b" although "a/x"
# would sort after "a-b" and "a.b" as a path.
mkdir a
printf 'in a\n' >a/x
mkdir a/empty
printf 'A\n' >A
printf 'Z\n' >Z
printf 'a-b\n' >a-b
printf 'a.b\n' >a.b
printf 'a_b\n' >a_b
printf 'a b\n' >'a b'
printf 'b\n' >b
printf '10\n' >10
printf '9\n' >9
printf 'tilde\n' >'~'
printf 'hidden\n' >.hidden
printf 'dash\n' >-
printf 'a umlaut\n' >"$(printf '\303\244')"
printf 'a + combining diaeresis\n' >"$(printf 'a\314\210')"
printf 'z\n' >"$(printf '\342\202\254')"
printf 'quote\n' >'"q"'
printf 'long name\n' >"$(printf 'n%.0s' $(seq 1 255))"
cd ..

# Roots that are not directories, and an empty one.
printf 'just a file\n' >file
printf '#!/bin/sh\nexit 0\n' >exe
chmod 0755 exe
: >empty-file
ln -s target/of/the/root link
mkdir empty-dir
