# Derivations for the known-answer tests. gen.sh instantiates every
# attribute with the real Nix into a throwaway chroot store; nothing here is
# ever built.
let
  builder = builtins.toFile "builder.sh" "echo building > $out\n";
  mk = name: attrs: derivation ({
    inherit name;
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ builder ];
  } // attrs);
in rec {
  simple = mk "simple" { };

  # A chain of three: inputDrvs, and an input reached twice.
  chain-1 = mk "chain-1" { };
  chain-2 = mk "chain-2" { dep = chain-1; };
  chain-3 = mk "chain-3" { dep = chain-2; other = chain-1; };

  multi = mk "multi" { outputs = [ "out" "dev" "bin" ]; };
  uses-dev = mk "uses-dev" { input = multi.dev; };
  uses-both = mk "uses-both" { inputs = [ multi.out multi.bin ]; };

  # Fixed outputs: flat and recursive, sha256, sha1 and sha512, with the
  # hash written as nix32, SRI, hex and base64.
  fixed-flat-sha256 = mk "fixed-flat-sha256" {
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq";
  };
  fixed-recursive-sha256 = mk "fixed-recursive-sha256" {
    outputHashMode = "recursive";
    outputHash = "sha256-Ic4HhwXQTKYyTB0DE/wI6pnzzvY4mmdE1AvS2dDNeBY=";
  };
  fixed-flat-sha1 = mk "fixed-flat-sha1" {
    outputHashAlgo = "sha1"; outputHash = "11f6ad8ec52a2984abaafd7c3b516503785c2072";
  };
  fixed-recursive-sha1 = mk "fixed-recursive-sha1" {
    outputHashMode = "recursive"; outputHashAlgo = "sha1";
    outputHash = "za96pd44x14iq81hrccp000zqpvzhp9r";
  };
  fixed-recursive-sha512 = mk "fixed-recursive-sha512" {
    outputHashMode = "recursive"; outputHashAlgo = "sha512";
    outputHash = "EhtHdKdZkkopKcSkEvtuMbmqp0ZGaEDvzEp21pqUFJ4jZOOYPWRv6vqhtRF4XlyekK7cMNpqa+rVUg7MmcZiag==";
  };
  # Two different derivations with the same fixed output: their modulo
  # hashes coincide, so a dependant's inputs merge into one entry.
  twin-a = mk "twin" { outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = fixed-flat-sha256.outputHash; };
  twin-b = mk "twin" { outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = fixed-flat-sha256.outputHash; extra = "b"; };
  fetched = derivation {
    name = "fetched"; system = "builtin"; builder = "builtin:fetchurl";
    url = "http://example.org/file"; outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = fixed-flat-sha256.outputHash;
  };
  uses-fixed = mk "uses-fixed" {
    deps = [ fixed-flat-sha256 fixed-recursive-sha256 fixed-flat-sha1 fixed-recursive-sha1 fixed-recursive-sha512 ];
  };
  uses-twins = mk "uses-twins" { a = twin-a; b = twin-b; c = chain-2; d = multi.dev; f = fetched; };

  escapes = mk "escapes" {
    quote = "say \"hi\"";
    backslash = "a\\b\\\\c";
    newline = "line1\nline2\n";
    tab = "a\tb";
    cr = "a\r\nb";
    all = "\"\\\n\r\t";
    unicode = "grüße ✓";
    control = builtins.fromJSON ''"\u0001\u001f\u007f"'';
    dollar = "\${not interpolated}";
    "key with \"quotes\" and \\" = "v";
    empty = "";
    args = [ builder "arg with \"quotes\"" "back\\slash" "new\nline" "" ];
  };

  structured = mk "structured" {
    __structuredAttrs = true;
    outputs = [ "out" "lib" ];
    list = [ 1 2.5 "three" true null ];
    nested.a.b = "c\"\n";
    big = 9007199254740993;
  };

  # Experimental kinds: floating content-addressed, deferred and impure.
  ca = mk "ca" { __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
  deferred = mk "deferred" { dep = ca; };
  impure = mk "impure" { __impure = true; };
}
