#!/bin/sh
# Re-record one committed capture from its ground-truth program (needs root):
#
#   tests/captures/make.sh sleeper      # -t offcpu of programs/sleeper.c
#   tests/captures/make.sh allocsplit   # -t alloc of programs/allocsplit.c
#
# Builds the program as tests/conftest.py does (frame pointers, -O1 -g),
# records it as a COMMAND with --capture --capture-binaries, keeps only the
# program's own copy in files/ (libc's and ld.so's copies are deleted and
# their "stored" set to "", their build IDs kept: they replay as
# lib+0xOFFSET), makes the files readable and writes expected.folded with
# `bpfprof replay`. A new recording has new addresses and counts: check the
# golden against the program's ground truth and update the README's numbers.
set -eu
name=${1:?usage: make.sh sleeper|allocsplit}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bpfprof=${BPFPROF:-$repo/.venv/bin/bpfprof}
work=$(mktemp -d /tmp/capture.XXXXXX)
gcc -O1 -g -fno-omit-frame-pointer -o "$work/$name" "$repo/tests/programs/$name.c"
case $name in
sleeper) args="-t offcpu -- $work/sleeper 100 30" ;;
allocsplit) args="-t alloc --alloc-rate 65536 -- $work/allocsplit 8192 4096" ;;
*) echo "make.sh: no recipe for $name" >&2; exit 2 ;;
esac
# stdin empty: the program starts at once (it waits for a line or EOF)
# shellcheck disable=SC2086
"$bpfprof" record -o "$work/record.folded" --capture "$work/cap" --capture-binaries $args </dev/null
python3 - "$work/cap" "$work/$name" <<'EOF'
import json, os, sys
cap, exe = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(os.path.join(cap, "files.jsonl"))]
for row in rows:
    if row["path"] != exe and row["stored"]:
        os.remove(os.path.join(cap, row["stored"]))
        row["stored"] = ""
with open(os.path.join(cap, "files.jsonl"), "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
EOF
"$bpfprof" replay "$work/cap" -o "$work/cap/expected.folded"
find "$work/cap" -type d -exec chmod 755 {} + && find "$work/cap" -type f -exec chmod 644 {} +
[ -f "$here/$name/README.md" ] && cp "$here/$name/README.md" "$work/cap/"
rm -rf "${here:?}/$name" && mv "$work/cap" "$here/$name"
echo "recorded (with libc's names):" && cat "$work/record.folded"
echo "replayed: $here/$name/expected.folded" && cat "$here/$name/expected.folded"
rm -rf "$work"
