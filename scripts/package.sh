#!/usr/bin/env bash
# Builds the Debian package: target/debian/smartcar-sync_VERSION-1_ARCH.deb (under
# $CARGO_TARGET_DIR when set). One release build; the man pages and shell completions are
# generated from the CLI definition by that binary (`smartcar-sync generate-assets`), so they
# always match it and a plain `cargo build` never pays for them. The package's contents are
# listed in Cargo.toml, [package.metadata.deb]; scripts/check-package.sh verifies them.
#
# Needs cargo-deb: cargo install cargo-deb --locked
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

# The production binary: no simulator, so no `demo` and no `simulate` (feature `simulator`).
cargo build --release --locked --no-default-features
assets="$target/release/assets"
rm -rf "$assets"
"$target/release/smartcar-sync" generate-assets "$assets" >/dev/null
# Debian installs man pages compressed; -n keeps the archive reproducible (no name or time).
gzip -9n "$assets"/man/*.1
# The debug line tables (backtraces) go into a separate -dbgsym package, as Debian does: the
# binary shipped is stripped (18 MB rather than 100 MB).
cargo deb --no-build --locked --dbgsym "$@"
