# Shared by the scripts in hack/: source it (`. "$(dirname "$0")/lib.sh"`).
#   USERNSRS_CACHE   where builds and downloads are cached, outside the repository
#   log TAG MSG...   a line on stderr, `[TAG] MSG`
#   die TAG MSG...   log, then exit 1
#   remove_unmounted DIR
#                    rm -rf DIR, but only when nothing is mounted at or under it (a failed stop
#                    can leave a mount, and rm -rf would delete through it): otherwise says what
#                    is still mounted and keeps DIR
# shellcheck shell=bash

# shellcheck disable=SC2034 # used by the scripts that source this file
CACHE=${USERNSRS_CACHE:-/var/cache/usernsrs}

log() { local tag=$1; shift; printf '[%s] %s\n' "$tag" "$*" >&2; }
die() { log "$@"; exit 1; }

remove_unmounted() {
  local dir=$1 real left
  [ -e "$dir" ] || return 0
  real=$(realpath -e "$dir")
  left=$(awk -v d="$real" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo)
  if [ -n "$left" ]; then
    log lib "not removing $real: still mounted there: $(echo "$left" | tr '\n' ' ')"
    return 1
  fi
  rm -rf "$real"
}
