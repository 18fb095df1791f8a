#!/bin/sh
# Create the unprivileged users and group the end-to-end tests run as.
# Idempotent. Needs root.
set -eu
getent group bpftk-dev >/dev/null || groupadd --system bpftk-dev
for u in bpftk-alice bpftk-bob bpftk-eve; do
    id "$u" >/dev/null 2>&1 || useradd --create-home --shell /usr/sbin/nologin "$u"
done
# bob reaches the group rule through a supplementary group only
usermod -a -G bpftk-dev bpftk-bob
