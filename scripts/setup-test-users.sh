#!/bin/sh
# Create the unprivileged users and group the end-to-end tests run as.
# bpftk-mallory is only used by attack tests, which signal every process
# of their own uid, so that they cannot disturb tests running alongside.
# Idempotent. Needs root.
set -eu
getent group bpftk-dev >/dev/null || groupadd --system bpftk-dev
for u in bpftk-alice bpftk-bob bpftk-eve bpftk-mallory; do
    id "$u" >/dev/null 2>&1 || useradd --create-home --shell /usr/sbin/nologin "$u"
done
# bob reaches the group rule through a supplementary group only
usermod -a -G bpftk-dev bpftk-bob
