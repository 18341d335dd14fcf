#!/bin/sh
# Renders the registry's config with the webhook token, then serves it.
#
# distribution reads most settings from REGISTRY_* variables, but not one
# element of a list (notifications.endpoints[0].headers), so the bearer
# token is substituted into config.yml here. The paths can be overridden
# for testing (tests/tests/deploy_compose.rs runs this script).
set -eu

template=${REGISTRY_CONFIG_TEMPLATE:-/etc/exploder/registry/config.yml}
rendered=${REGISTRY_CONFIG_RENDERED:-/tmp/registry-config.yml}
token=${EXPLODER_WEBHOOK_TOKEN:-}

# A bearer token is token68: letters, digits and -._~+/ with trailing '='.
# Anything else could also break the sed expression below.
case "$token" in
    "" | *[!A-Za-z0-9._~+/=-]*)
        echo "registry: EXPLODER_WEBHOOK_TOKEN must be set and use only A-Z a-z 0-9 . _ ~ + / = - (e.g. openssl rand -hex 32)" >&2
        exit 1
        ;;
esac

umask 077
sed "s|__EXPLODER_WEBHOOK_TOKEN__|$token|g" "$template" >"$rendered"
exec registry serve "$rendered"
