#!/usr/bin/env bash
# Create MQTT users with random passwords in a mosquitto password file.
#
#   make-passwords.sh PASSWORD_FILE SECRETS_DIR USER [USER ...]
#
# For each USER a random password is written to SECRETS_DIR/<user>.password
# (mode 0600, "/" in the user name replaced by "_") and its salted hash is
# added to PASSWORD_FILE with mosquitto_passwd. An existing secret file is
# reused, so re-running the script is safe and adds only new users.
# Passwords go to mosquitto_passwd on stdin, never on the command line (ps).
#
# User names must follow the ACL scheme in acl.conf:
#   service-<junction>, field-<junction>, <junction>/det/<detector_id>
set -euo pipefail

if [ "$#" -lt 3 ]; then
    echo "usage: $0 PASSWORD_FILE SECRETS_DIR USER [USER ...]" >&2
    exit 2
fi
pwfile="$1"; secrets="$2"; shift 2
MOSQUITTO_PASSWD="${MOSQUITTO_PASSWD:-mosquitto_passwd}"

umask 077
mkdir -p "$secrets"
[ -e "$pwfile" ] || : > "$pwfile"

for user in "$@"; do
    # Only the three identity shapes the ACL knows; anything else would either
    # get no rights or, via the %u pattern, rights on an unexpected topic.
    if ! [[ "$user" =~ ^(service|field)-[A-Za-z0-9_-]+$ || "$user" =~ ^[A-Za-z0-9_-]+/det/[A-Za-z0-9_.-]+$ ]]; then
        echo "make-passwords: bad user name '$user' (want service-<junction>, field-<junction> or <junction>/det/<detector_id>)" >&2
        exit 2
    fi
    secret="$secrets/${user//\//_}.password"
    if [ ! -s "$secret" ]; then
        # URL-safe alphabet so the password survives config files and shells.
        openssl rand -base64 33 | tr '+/' '-_' | tr -d '\n=' > "$secret"
    fi
    pw="$(cat "$secret")"
    printf '%s\n%s\n' "$pw" "$pw" | "$MOSQUITTO_PASSWD" "$pwfile" "$user" >/dev/null
done
echo "make-passwords: $# user(s) in $pwfile, secrets in $secrets" >&2
