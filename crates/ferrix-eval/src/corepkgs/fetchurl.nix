# <nix/fetchurl.nix>: a fixed-output file downloaded by the builder itself
# (builtin:fetchurl). Its arguments, and the attributes of the derivation it makes, are
# those of the file Nix ships under this name, so that the same .drv is written.
{ system ? "" # accepted, unused: the derivation's system is "builtin"
, url
, hash ? "" # SRI
, md5 ? ""
, sha1 ? ""
, sha256 ? ""
, sha512 ? ""
  # The first hash given, in this order of preference, and its algorithm (an SRI hash
  # names its own); sha256 when none is.
, outputHash ? (builtins.head (builtins.filter (h: h != "") [ hash sha512 sha1 md5 ] ++ [ sha256 ]))
, outputHashAlgo ? (
    let given = builtins.filter (h: h.value != "") [
      { value = hash; algo = ""; }
      { value = sha512; algo = "sha512"; }
      { value = sha1; algo = "sha1"; }
      { value = md5; algo = "md5"; }
    ];
    in if given == [ ] then "sha256" else (builtins.head given).algo)
, executable ? false
, unpack ? false
, name ? baseNameOf (toString url)
}:

derivation {
  inherit name url executable unpack outputHash outputHashAlgo;
  builder = "builtin:fetchurl";
  system = "builtin";
  outputHashMode = if executable || unpack then "recursive" else "flat";
  # A download need not go to a remote machine and back.
  preferLocalBuild = true;
  # Proxy settings are taken from the caller: a fixed output is checked by its hash anyway.
  impureEnvVars = [ "http_proxy" "https_proxy" "ftp_proxy" "all_proxy" "no_proxy" ];
  # What nix-prefetch-url reads.
  urls = [ url ];
}
