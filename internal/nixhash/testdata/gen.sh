#!/usr/bin/env bash
# Regenerates the known answers in this directory with the real Nix.
# Fixtures checked in were made by Nix 2.8.0 (nix (Nix) 2.8.0).
#
#   inputs/<name>   the data that was hashed
#   hashes.txt      "<input> <algo> <base16> <nix32> <base64> <sri>" per line:
#                   base16 and nix32 from `nix-hash --flat [--base32]`, the
#                   other forms from `nix hash to-base64 / to-sri`, and
#                   `nix hash to-base16 / to-base32` cross-checked on every form
#   lenient.txt     "<algo> <string> <base16>" per line: forms that are not
#                   canonical but that `nix hash to-base16 --type <algo>`
#                   accepts (upper-case hex, SRI without '=' padding, base64
#                   with non-zero trailing bits)
#   bad.txt         "<algo> <string>" per line: strings that
#                   `nix hash to-base16 --type <algo>` rejects
#
# Run from anywhere: bash internal/nixhash/testdata/gen.sh
set -euo pipefail
cd "$(dirname "$0")"

nix() { command nix --extra-experimental-features nix-command "$@"; }
echo "using $(command nix --version)" >&2

mkdir -p inputs
printf '' >inputs/empty
printf 'hello' >inputs/hello
printf 'The quick brown fox jumps over the lazy dog\n' >inputs/fox
# 300 bytes covering every byte value, from a fixed recipe.
for i in $(seq 0 299); do printf "\\$(printf '%03o' $((i * 7 % 256)))"; done >inputs/bytes

: >hashes.txt
for f in empty hello fox bytes; do
	for algo in md5 sha1 sha256 sha512; do
		b16=$(nix-hash --type "$algo" --flat "inputs/$f")
		b32=$(nix-hash --type "$algo" --flat --base32 "inputs/$f")
		b64=$(nix hash to-base64 --type "$algo" "$b16")
		sri=$(nix hash to-sri --type "$algo" "$b16")
		for form in "$b16" "$b32" "$b64" "$sri" "$algo:$b16" "$algo:$b32" "$algo:$b64"; do
			[ "$(nix hash to-base16 --type "$algo" "$form")" = "$b16" ]
			[ "$(nix hash to-base32 --type "$algo" "$form")" = "$b32" ]
		done
		echo "$f $algo $b16 $b32 $b64 $sri" >>hashes.txt
	done
done

: >lenient.txt
while read -r f algo b16 b32 b64 sri; do
	[ "$f" = hello ] || continue
	upper=$(echo "$b16" | tr a-f A-F)
	for form in "$upper" "$algo:$upper" "${sri%%=*}"; do
		[ "$(nix hash to-base16 --type "$algo" "$form")" = "$b16" ]
		echo "$algo $form $b16" >>lenient.txt
	done
done <hashes.txt
# "hello" in SHA-256 base64 ends in "k=": 'l' differs only in the two bits
# that padding discards.
b16=2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
for form in sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCR= LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCR=; do
	[ "$(nix hash to-base16 --type sha256 "$form")" = "$b16" ]
	echo "sha256 $form $b16" >>lenient.txt
done

# Candidates for rejection; each must make Nix fail or it is an error here.
z51=000000000000000000000000000000000000000000000000000
bad=(
	"sha256 z$z51"                       # nix32 with non-zero padding bits
	"sha256 2$z51"                       # the smallest such first digit
	"md5 8000000000000000000000000"0     # md5 nix32: 2 padding bits
	"sha512 4$(printf '0%.0s' $(seq 102))" # sha512 nix32: 3 padding bits
	"sha256 e$(printf '0%.0s' $(seq 51))" # 'e' is not in the nix32 alphabet
	"sha256 u$(printf '0%.0s' $(seq 51))"
	"sha256 O$(printf '0%.0s' $(seq 51))"
	"sha256 $(printf '0%.0s' $(seq 63))g" # bad hex digit
	"sha256 $(printf '0%.0s' $(seq 63))"  # wrong lengths
	"sha256 $(printf '0%.0s' $(seq 65))"
	"sha256 $(printf '0%.0s' $(seq 51))"
	"sha256 $(printf 'A%.0s' $(seq 43))"
	"sha256 sha1:$(printf '0%.0s' $(seq 40))"      # prefix names another algorithm
	"sha256 md5-$(printf 'A%.0s' $(seq 22))=="
	"sha256 sha257:$(printf '0%.0s' $(seq 64))"     # unknown algorithm
	"sha256 sha256-$(printf 'A%.0s' $(seq 40))===="  # SRI with a short digest
	"sha256 sha256-$(printf '0%.0s' $(seq 64))"      # SRI digest must be base64
	"sha1 $(printf '!%.0s' $(seq 28))"               # bad base64 character
	"sha256 $(printf 'A%.0s' $(seq 44))"             # base64 of 33 bytes
	"sha256 sha256:$(printf '0%.0s' $(seq 44))"
	"sha1 $(printf 'A%.0s' $(seq 28))"               # base64 of 21 bytes
	"md5 $(printf 'A%.0s' $(seq 24))"                # base64 of 18 bytes
	"sha512 $(printf 'A%.0s' $(seq 88))"             # base64 of 66 bytes
	"sha256 sha256:"
	"sha256 "
)
: >bad.txt
for line in "${bad[@]}"; do
	algo=${line%% *}
	s=${line#* }
	if nix hash to-base16 --type "$algo" "$s" >/dev/null 2>&1; then
		echo "Nix accepts $algo '$s'; remove it from the bad list" >&2
		exit 1
	fi
	echo "$algo $s" >>bad.txt
done
