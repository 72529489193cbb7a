# A package set in the style of nixpkgs, for bench/eval.py: a fixed point with overlays,
# callPackage (functionArgs, intersectAttrs with the whole set) and overrides, mkDerivation
# with interpolated build inputs. Package i depends on up to three earlier ones; `n`
# packages and one more that an overlay adds. Instantiating it writes n + 1 derivations.
{ n ? 3000 }:
let
  lib = rec {
    fix = f: let x = f x; in x;
    extends = overlay: f: final: let prev = f final; in prev // overlay final prev;
    foldl = builtins.foldl';
    composeManyExtensions = foldl (f: g: final: prev: let fa = f final prev; prev' = prev // fa; in fa // g final prev') (final: prev: { });
    callPackageWith = autoArgs: fn: args:
      let auto = builtins.intersectAttrs (builtins.functionArgs fn) autoArgs;
          result = fn (auto // args);
      in result // { override = newArgs: callPackageWith autoArgs fn (args // newArgs); };
    optionalString = c: s: if c then s else "";
    concatMapStrings = f: l: builtins.concatStringsSep "" (map f l);
    listToAttrs = builtins.listToAttrs;
    genAttrs = names: f: listToAttrs (map (n: { name = n; value = f n; }) names);
    optional = c: x: if c then [ x ] else [ ];
    elem = builtins.elem;
  };
  stdenv = {
    mkDerivation = { pname, version, buildInputs ? [ ], doCheck ? false, meta ? { }, ... } @ args:
      let drv = derivation ((builtins.removeAttrs args [ "meta" "doCheck" ]) // {
        name = "${pname}-${version}";
        system = "x86_64-linux";
        builder = "/bin/sh";
        args = [ "-c" ("echo ${pname} > $out" + lib.concatMapStrings (p: " ${p}") buildInputs + lib.optionalString doCheck " check") ];
      });
      in drv // { inherit meta; passthru = { inherit pname version; }; };
  };
  name = i: "p${toString i}";
  pkgFn = i: { stdenv, lib, pkgs, ... }:
    stdenv.mkDerivation {
      pname = name i;
      version = "1.${toString (i - i / 7 * 7)}";
      buildInputs = builtins.filter (x: x != null) (map (j: pkgs.${name j} or null) (builtins.filter (j: j >= 0 && j < i) [ (i - 1) (i / 2) (i / 3 - 1) ]));
      doCheck = i - i / 2 * 2 == 0;
      meta = { description = "package ${toString i}"; license = if i - i / 3 * 3 == 0 then "mit" else "gpl"; };
    };
  base = self: { inherit lib stdenv; pkgs = self; callPackage = fn: args: lib.callPackageWith self fn args; }
    // builtins.listToAttrs (builtins.genList (i: { name = name i; value = self.callPackage (pkgFn i) { }; }) n);
  overlays = [
    (final: prev: { p1 = prev.p1.override { doCheck = true; }; })
    (final: prev: builtins.mapAttrs (k: v: if builtins.isAttrs v && v ? passthru then v // { tagged = true; } else v) prev)
    (final: prev: { extra = final.stdenv.mkDerivation { pname = "extra"; version = "0"; buildInputs = [ final.p10 final.p20 ]; }; })
  ];
  pkgs = lib.fix (lib.extends (lib.composeManyExtensions overlays) base);
in builtins.filter (x: x != null) (map (i: if pkgs ? ${name i} then pkgs.${name i} else null) (builtins.genList (x: x) n)) ++ [ pkgs.extra ]
