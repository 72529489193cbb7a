#!/usr/bin/env bash
# A Ferrix build hook (`build-hook = /path/to/hook.sh`) that spreads derivations over the
# machines listed in machines.conf (or $FERRIX_HOOK_MACHINES). The protocol is described in
# README.md. Each machine line: NAME MAX-JOBS SYSTEMS COMMAND..., where COMMAND runs
# `nix-store` on that machine (`ssh builder1 nix-store`, or `nix-store --store /srv/m1`
# for a store on this host). Inputs go with `nix-store --export | COMMAND --import`, the
# build with `COMMAND -r`, outputs come back with `COMMAND --dump`.
set -u -m # -m: every background job is a process group of its own, killed whole on cancel

conf=${FERRIX_HOOK_MACHINES:-$(dirname "$0")/machines.conf}
here_nix_store=${FERRIX_HOOK_NIX_STORE:-nix-store}
slots=$(mktemp -d)
trap 'rm -rf "$slots"; jobs -p | while read -r p; do kill -- -"$p" 2>/dev/null; done' EXIT

names=() max=() systems=() cmds=()
while read -r name n sys cmd; do
  [[ -z "${name:-}" || "$name" == \#* ]] && continue
  names+=("$name") max+=("$n") systems+=("$sys") cmds+=("$cmd")
done < "$conf"

declare -A machine_of slot_of pid_of

# The fitting machine with the fewest jobs for its size, and a slot on it (a directory,
# made atomically); fails when every fitting machine is full.
take_slot() { # system
  local best= best_load= i used s
  for i in "${!names[@]}"; do
    [[ ",${systems[$i]}," == *",$1,"* ]] || continue
    used=$(find "$slots" -maxdepth 1 -name "${names[$i]}.*" | wc -l)
    (( used < max[i] )) || continue
    if [ -z "$best" ] || (( used * max[best] < best_load * max[i] )); then best=$i best_load=$used; fi
  done
  [ -n "$best" ] || return 1
  for ((s = 0; s < max[best]; s++)); do
    if mkdir "$slots/${names[$best]}.$s" 2>/dev/null; then
      echo "$best $slots/${names[$best]}.$s"
      return 0
    fi
  done
  return 1
}

fits_somewhere() { # system
  local i
  for i in "${!names[@]}"; do [[ ",${systems[$i]}," == *",$1,"* ]] && return 0; done
  return 1
}

build() { # id dir
  local id=$1 dir=$2 m=${machine_of[$1]} slot=${slot_of[$1]}
  local cmd=${cmds[$m]}
  (
    trap 'rmdir "$slot"' EXIT
    # shellcheck disable=SC2046
    missing=$($cmd --check-validity --print-invalid $(cat "$dir/inputs")) ||
      { echo "failed $id cannot reach ${names[$m]}"; exit; }
    if [ -n "$missing" ]; then
      # shellcheck disable=SC2086
      "$here_nix_store" --export $missing | $cmd --import > /dev/null ||
        { echo "failed $id copying the inputs to ${names[$m]} failed"; exit; }
    fi
    set -o pipefail
    # The build's log goes to Ferrix line by line; its output paths are not needed.
    if ! $cmd -r "$(cat "$dir/drv")" 2>&1 > /dev/null | while IFS= read -r l; do echo "log $id $l"; done; then
      echo "failed $id the build on ${names[$m]} failed"
      exit
    fi
    while read -r name path; do
      $cmd --dump "$path" > "$dir/$name.nar" || { echo "failed $id copying '$path' back failed"; exit; }
    done < "$dir/outputs"
    echo "done $id"
  ) &
  pid_of[$id]=$!
}

while read -r verb id a b c d; do
  case $verb in
    try) # a: derivation, b: system, c: 1 if a local slot is free, d: features
      if ! fits_somewhere "$b"; then
        echo "decline $id"
      elif got=$(take_slot "$b"); then
        machine_of[$id]=${got%% *} slot_of[$id]=${got#* }
        echo "accept $id ${names[${machine_of[$id]}]}"
      elif [ "$c" = 1 ]; then
        echo "decline $id"
      else
        echo "postpone $id"
      fi ;;
    build) build "$id" "$a" ;;
    cancel)
      if [ -n "${pid_of[$id]:-}" ]; then kill -- -"${pid_of[$id]}" 2> /dev/null
      elif [ -n "${slot_of[$id]:-}" ]; then rmdir "${slot_of[$id]}"
      fi ;;
  esac
done
wait
