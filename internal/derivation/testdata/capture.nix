# Derivations built through a recording wrapper by gen.sh to capture the
# BasicDerivation a real Nix client sends to a remote builder. bb is the
# store path of a directory holding a static busybox as bin/busybox and
# bin/sh.
{ bb }:
let
  bbp = builtins.storePath bb;
  mk = name: attrs: derivation ({
    inherit name;
    system = "x86_64-linux";
    builder = "${bbp}/bin/sh";
    PATH = "${bbp}/bin";
  } // attrs);
in rec {
  chain-a = mk "chain-a" { args = [ "-c" "echo a > $out" ]; };
  chain-b = mk "chain-b" { args = [ "-c" "cat ${chain-a} > $out; echo b >> $out" ]; };
  chain-c = mk "chain-c" { args = [ "-c" "cat ${chain-b} > $out; echo c >> $out" ]; };
  multi = mk "multi" { outputs = [ "out" "dev" ]; args = [ "-c" "echo o > $out; echo d > $dev" ]; };
  uses-dev = mk "uses-dev" { args = [ "-c" "cat ${multi.dev} > $out" ]; };
  fixed = mk "fixed" {
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"; # "hello\n"
    args = [ "-c" "echo hello > $out" ];
  };
  uses-fixed = mk "uses-fixed" { args = [ "-c" "cat ${fixed} > $out" ]; };
  structured = mk "structured" {
    __structuredAttrs = true;
    outputs = [ "out" "doc" ];
    list = [ 1 "two" ];
    args = [ "-c" ''
      for o in out doc; do
        echo $o > $(grep -o "\"$o\":\"[^\"]*\"" .attrs.json | cut -d'"' -f4)
      done
    '' ];
  };
  escapes = mk "escapes" { args = [ "-c" "echo \"$msg\" > $out" ]; msg = "tab\there \"quoted\" back\\slash\nnewline"; };
}
