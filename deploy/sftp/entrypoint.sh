#!/bin/sh
# Creates the SFTP user and its dropzone on every start (idempotent), then runs sshd.
#   SFTP_USER, SFTP_PASSWORD     required
#   SFTP_AUTHORIZED_KEY          optional public key line for key authentication
#   SFTP_UID                     optional, default 1000 (owner of exports/ and acks/)
set -eu
: "${SFTP_USER:?set SFTP_USER}"
: "${SFTP_PASSWORD:?set SFTP_PASSWORD}"
uid="${SFTP_UID:-1000}"

key=/etc/ssh/keys/ssh_host_ed25519_key
[ -f "$key" ] || ssh-keygen -q -t ed25519 -N "" -f "$key"
echo "host key: $(ssh-keygen -l -f "$key.pub")"

id "$SFTP_USER" >/dev/null 2>&1 || useradd --uid "$uid" --no-create-home --shell /usr/sbin/nologin "$SFTP_USER"
echo "$SFTP_USER:$SFTP_PASSWORD" | chpasswd
if [ -n "${SFTP_AUTHORIZED_KEY:-}" ]; then
    printf '%s\n' "$SFTP_AUTHORIZED_KEY" > "/etc/ssh/keys/authorized_keys_$SFTP_USER"
    chmod 0644 "/etc/ssh/keys/authorized_keys_$SFTP_USER"
fi

# A chroot must be owned by root and not writable by others; the user writes below it.
root="/srv/sftp/$SFTP_USER"
mkdir -p "$root/dropzone/exports" "$root/dropzone/acks"
chown root:root /srv/sftp "$root" "$root/dropzone"
chmod 0755 /srv/sftp "$root" "$root/dropzone"
chown "$SFTP_USER" "$root/dropzone/exports" "$root/dropzone/acks"

exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config
