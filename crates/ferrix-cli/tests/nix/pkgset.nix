# A package set in the style of nixpkgs, written for the test: a fixed point with
# overlays, callPackage with overrides, and a small module system.
let
  lib = rec {
    fix = f: let x = f x; in x;
    extends = overlay: f: final: let prev = f final; in prev // overlay final prev;
    composeExtensions = f: g: final: prev:
      let fApplied = f final prev; prev' = prev // fApplied; in fApplied // g final prev';
    foldr = op: nul: list:
      let len = builtins.length list;
          fold' = n: if n == len then nul else op (builtins.elemAt list n) (fold' (n + 1));
      in fold' 0;
    callPackageWith = autoArgs: fn: args:
      let f = if builtins.isFunction fn then fn else import fn;
          auto = builtins.intersectAttrs (builtins.functionArgs f) autoArgs;
          result = f (auto // args);
      in result // { override = newArgs: callPackageWith autoArgs fn (args // newArgs); };
    mapAttrsToList = f: attrs: map (n: f n attrs.${n}) (builtins.attrNames attrs);
    optionalString = cond: s: if cond then s else "";
    concatMapStrings = f: list: builtins.concatStringsSep "" (map f list);
    mkOption = { default ? null, type ? "any", description ? "" }: { _type = "option"; inherit default type description; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    isOption = x: builtins.isAttrs x && (x._type or null) == "option";
    # Definitions of one option, with mkIf and mkMerge pushed down.
    pushDown = def:
      if builtins.isAttrs def && (def._type or null) == "if" then
        (if def.condition then pushDown def.content else [ ])
      else if builtins.isAttrs def && (def._type or null) == "merge" then
        builtins.concatMap pushDown def.contents
      else [ def ];
    mergeDefs = type: defs:
      if type == "list" then builtins.concatLists defs
      else if type == "attrs" then builtins.foldl' (a: b: a // b) { } defs
      else if defs == [ ] then null
      else builtins.elemAt defs (builtins.length defs - 1);
    evalModules = modules:
      let
        config = builtins.mapAttrs (name: opt:
          let defs = builtins.concatMap (m: let c = m.config or { }; in if c ? ${name} then pushDown c.${name} else [ ]) evaluated;
          in if defs == [ ] then opt.default else mergeDefs opt.type defs) options;
        evaluated = map (m: if builtins.isFunction m then m { inherit config lib; } else m) modules;
        options = builtins.foldl' (a: m: a // (m.options or { })) { } evaluated;
      in { inherit config options; };
  };

  stdenv = {
    mkDerivation = { pname, version, buildScript ? "", propagated ? [ ], outputs ? [ "out" ], ... } @ args:
      derivation ((builtins.removeAttrs args [ "buildScript" "propagated" ]) // {
        name = "${pname}-${version}";
        system = "x86_64-linux";
        builder = "/bin/sh";
        inherit outputs;
        args = [ "-c" (buildScript + lib.concatMapStrings (p: " ${p}") propagated) ];
      });
  };

  base = self: {
    inherit lib stdenv;
    callPackage = lib.callPackageWith self;
    zlib = self.callPackage ({ stdenv }: stdenv.mkDerivation { pname = "zlib"; version = "1.2.13"; buildScript = "echo zlib > $out"; }) { };
    openssl = self.callPackage ({ stdenv, zlib, withZlib ? true }: stdenv.mkDerivation {
      pname = "openssl"; version = "3.0.8"; outputs = [ "out" "dev" ];
      propagated = if withZlib then [ zlib ] else [ ];
      buildScript = "echo openssl > $out; echo dev > $dev";
    }) { };
    curl = self.callPackage ({ stdenv, openssl, zlib }: stdenv.mkDerivation {
      pname = "curl"; version = "8.0.1"; propagated = [ openssl.dev zlib ];
      buildScript = "echo curl ${openssl} > $out";
    }) { };
  };

  overlays = [
    (final: prev: { zlib = prev.zlib // { patched = true; }; hello = final.stdenv.mkDerivation { pname = "hello"; version = "2.12"; buildScript = "echo hi > $out"; }; })
    (final: prev: { curl-minimal = prev.curl.override { openssl = prev.openssl.override { withZlib = false; }; }; })
  ];

  pkgs = lib.fix (builtins.foldl' (f: o: lib.extends o f) base overlays);

  system = lib.evalModules [
    { options = { services = lib.mkOption { type = "list"; default = [ ]; }; name = lib.mkOption { default = "machine"; }; env = lib.mkOption { type = "attrs"; default = { }; }; }; }
    ({ config, ... }: { config = { services = [ "sshd" ]; env = { PATH = "/bin"; }; }; })
    ({ config, ... }: { config = { services = lib.mkIf (config.name == "machine") [ "nginx" ]; env = lib.mkMerge [ { A = "1"; } (lib.mkIf false { B = "2"; }) ]; }; })
    { config.name = "machine"; }
  ];
in {
  inherit (pkgs) zlib openssl curl hello curl-minimal;
  opensslDev = pkgs.openssl.dev;
  summary = {
    names = map (p: p.name) [ pkgs.zlib pkgs.openssl pkgs.curl pkgs.hello pkgs.curl-minimal ];
    patched = pkgs.zlib.patched or false;
    config = system.config;
    sum = lib.foldr (a: b: a + b) 0 [ 1 2 3 4 ];
  };
}
