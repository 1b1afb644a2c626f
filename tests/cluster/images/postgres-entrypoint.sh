#!/bin/bash
# The PostgreSQL image's entrypoint (tests/cluster/images.py), behaving as the official
# image's does for what k8s/components/postgres uses: POSTGRES_USER, POSTGRES_DB,
# POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, POSTGRES_INITDB_ARGS, PGDATA; the first start
# runs initdb and creates the database through a server listening on the Unix socket only,
# then the real server replaces this script. Run as root, it steps down to postgres.
set -Eeuo pipefail

if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
	exec "$@"
fi
if [ "$(id -u)" = 0 ]; then
	install -d -o postgres -g postgres -m 700 "$PGDATA"
	install -d -o postgres -g postgres -m 3777 /var/run/postgresql
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
	if [ -n "${POSTGRES_PASSWORD:-}" ]; then
		echo "error: both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set" >&2
		exit 1
	fi
	POSTGRES_PASSWORD="$(< "$POSTGRES_PASSWORD_FILE")"
fi
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
AUTH="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"

mkdir -p "$PGDATA"
chmod 700 "$PGDATA" 2>/dev/null || true

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$AUTH" != trust ]; then
		echo "error: the database is uninitialized and no password is set:" \
			"set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE" >&2
		exit 1
	fi
	if ! id -un > /dev/null 2>&1; then
		echo "error: uid $(id -u) has no entry in /etc/passwd (initdb needs one): run as postgres (999)" >&2
		exit 1
	fi
	# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS holds several arguments
	initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
		${POSTGRES_INITDB_ARGS:-}
	printf '\nhost all all all %s\n' "$AUTH" >> "$PGDATA/pg_hba.conf"
	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
	export PGPASSWORD="$POSTGRES_PASSWORD"
	if [ "$POSTGRES_DB" != postgres ]; then
		# From standard input: psql interpolates :"db" there, not in -c.
		psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
			--set db="$POSTGRES_DB" <<< 'CREATE DATABASE :"db";'
	fi
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
			*.sh) . "$f" ;;
			*.sql) psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" \
				--dbname "$POSTGRES_DB" -f "$f" ;;
		esac
	done
	unset PGPASSWORD
	pg_ctl -D "$PGDATA" -m fast -w stop
	echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
