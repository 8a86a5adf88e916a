#!/usr/bin/env bash
# Run a command with an X display: the real one if DISPLAY is set, else a virtual one (Xvfb with
# Mesa GL; xdotool for the tests that click like a person). Installs them with apt-get when missing and we are root; otherwise says what to do.
set -euo pipefail
# The libxcb-*/libxkbcommon-x11 libraries are what Qt's xcb plugin needs for PsychoPy's (PyQt6) dialogs.
PKGS="xvfb xauth xdotool libgl1 libglu1-mesa libgl1-mesa-dri libjack-jackd2-0 libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0"

# One ldconfig listing, searched with a here-string: `ldconfig -p | grep -q` under pipefail fails at random
# (grep exits at the first match and ldconfig dies of SIGPIPE).
LIBS=$(ldconfig -p 2>/dev/null || true)
have_libs() { for l in "$@"; do grep -q "$l" <<<"$LIBS" || return 1; done; }
have_gl() { have_libs libGL.so.1 libGLU.so.1; }
have_jack() { have_libs libjack.so.0; }
have_qt_xcb() { have_libs libxcb-icccm.so.4 libxcb-keysyms.so.1 libxcb-cursor.so.0 libxkbcommon-x11.so.0; }

if [ -n "${DISPLAY:-}" ] && [ -z "${FVMATCH_FORCE_XVFB:-}" ]; then
  exec "$@"
fi

if ! command -v xvfb-run >/dev/null || ! command -v xdotool >/dev/null || ! have_gl || ! have_jack || ! have_qt_xcb; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "with-display: installing $PKGS (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq $PKGS >/dev/null
  else
    echo "error: no DISPLAY and no Xvfb/Mesa GL. Install them, e.g. on Debian/Ubuntu:" >&2
    echo "  sudo apt-get install $PKGS" >&2
    echo "or run on a machine with a display." >&2
    exit 1
  fi
fi
# Our own Xvfb rather than xvfb-run, so that nothing outlives this wrapper: xvfb-run stays the parent of the
# command and traps signals, but a SIGKILL of it orphaned both the command and Xvfb. Here this process
# *becomes* the command (exec), Xvfb gets a parent-death signal (it dies with the command, even on SIGKILL),
# and fvmatch-session, when started by a script run here, dies with that script (FVMATCH_DIE_WITH_PARENT).
export FVMATCH_DIE_WITH_PARENT=1
DISPFILE=$(mktemp)
if setpriv --help 2>&1 | grep -q -- --pdeathsig; then
  setpriv --pdeathsig KILL Xvfb -displayfd 3 -screen 0 1920x1080x24 -nolisten tcp 3>"$DISPFILE" >/dev/null 2>&1 &
  XVFB_PID=$!
else  # util-linux older than 2.33: a watcher stops Xvfb once this process (then the command) is gone
  Xvfb -displayfd 3 -screen 0 1920x1080x24 -nolisten tcp 3>"$DISPFILE" >/dev/null 2>&1 &
  XVFB_PID=$!
  ( trap '' HUP; while kill -0 $$ 2>/dev/null; do sleep 0.5; done; kill "$XVFB_PID" 2>/dev/null ) >/dev/null 2>&1 &
fi
NUMBER=""
for _ in $(seq 1 200); do  # 24-bit depth: at 16 bits pyglet hangs when opening a window under Xvfb
  if read -r NUMBER <"$DISPFILE" 2>/dev/null && [ -n "$NUMBER" ]; then break; fi
  kill -0 "$XVFB_PID" 2>/dev/null || break
  sleep 0.1
done
rm -f "$DISPFILE"
if [ -z "$NUMBER" ]; then
  echo "error: Xvfb did not start" >&2
  kill "$XVFB_PID" 2>/dev/null || true
  exit 1
fi
export DISPLAY=":$NUMBER"
exec "$@"
