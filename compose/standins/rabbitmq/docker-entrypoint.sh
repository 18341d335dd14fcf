#!/bin/sh
# The real image's entrypoint, for Debian's rabbitmq-server: as root,
# hand /var/lib/rabbitmq to the rabbitmq user and run as it; the default
# user from RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS (read on the
# first start only, as RabbitMQ does).
set -eu
case "${1:-}" in
rabbitmq*)
    if [ "$(id -u)" = 0 ]; then
        if [ "$1" = rabbitmq-server ]; then
            find /var/lib/rabbitmq ! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
            if [ -n "${RABBITMQ_DEFAULT_USER:-}${RABBITMQ_DEFAULT_PASS:-}" ]; then
                umask 077
                {
                    [ -z "${RABBITMQ_DEFAULT_USER:-}" ] || echo "default_user = $RABBITMQ_DEFAULT_USER"
                    [ -z "${RABBITMQ_DEFAULT_PASS:-}" ] || echo "default_pass = $RABBITMQ_DEFAULT_PASS"
                } >/etc/rabbitmq/conf.d/05-default-user.conf
                chown rabbitmq:rabbitmq /etc/rabbitmq/conf.d/05-default-user.conf
            fi
        fi
        exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$0" "$@"
    fi
    ;;
esac
exec "$@"
