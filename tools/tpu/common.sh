#!/usr/bin/env bash
# Shared helpers for tools/tpu/*.sh (sourced, not run).
# shellcheck disable=SC2034  # variables here are used by the scripts that source this file

DRY_RUN=0

# Prints a command as one line that a shell reads back as the same words (args with special
# characters in single quotes, like Python's shlex.quote): what --dry-run shows.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

show() {
  local out="" arg
  for arg in "$@"; do
    out+="$(quote "$arg") "
  done
  printf '%s\n' "${out% }"
}

# Runs a command (echoed to stderr as '+ CMD'), or with --dry-run only prints it on stdout,
# as a bare line that can be copied and run by hand.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    show "$@"
  else
    printf '+ %s\n' "$(show "$@")" >&2
    "$@"
  fi
}

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}
