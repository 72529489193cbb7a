# A small package set in the Nix language, built by the main job (scripts/main-job.sh):
# greeting <- shout <- report (two outputs, out and doc). The builders are the machine's
# /bin/sh and coreutils, so the sandbox must show /bin, /usr and /lib (see the script).
{ system ? builtins.currentSystem }:

let
  # Just enough of a standard environment: a shell script as the builder, the rest of the
  # attributes passed to it as environment variables.
  mkDerivation = { name, script, outputs ? [ "out" ], ... } @ attrs:
    derivation (builtins.removeAttrs attrs [ "script" ] // {
      inherit name system outputs;
      builder = "/bin/sh";
      args = [ "-c" script ];
    });
in
rec {
  # A source tree, copied to the store because a string refers to it.
  src = ../hello-src;

  greeting = mkDerivation {
    name = "greeting";
    inherit src;
    script = ''
      echo "building $name with $NIX_BUILD_CORES cores in $PWD"
      /bin/cat $src/share/README > $out
      echo 'hello from a Ferrix build' >> $out
    '';
  };

  shout = mkDerivation {
    name = "shout";
    inherit greeting;
    script = "/usr/bin/tr a-z A-Z < $greeting > $out";
  };

  report = mkDerivation {
    name = "report";
    outputs = [ "out" "doc" ];
    inherit greeting shout;
    script = ''
      /bin/mkdir -p $out $doc
      /bin/ln -s $greeting $out/greeting
      /bin/ln -s $shout $out/shout
      echo "see $out" > $doc/README
    '';
  };
}
