#!/bin/sh
# Run inside the PostgreSQL image's root (an mmdebstrap customize hook, tests/cluster/images.py):
# the official image's layout on top of Debian's postgresql-15.
set -eu
# The package made a "main" cluster (the official image switches that off): the entrypoint
# makes one in $PGDATA instead.
rm -rf /etc/postgresql/15 /var/lib/postgresql/15
# Listen on every address (the Pod's IP), as the official image's sample config does.
sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" /usr/share/postgresql/15/postgresql.conf.sample
grep -qF "listen_addresses = '*'" /usr/share/postgresql/15/postgresql.conf.sample
install -d -o postgres -g postgres -m 1777 /var/lib/postgresql /var/lib/postgresql/data
mkdir -p /docker-entrypoint-initdb.d
chmod 755 /usr/local/bin/postgres-entrypoint.sh
rm /usr/local/bin/postgres-layout.sh
