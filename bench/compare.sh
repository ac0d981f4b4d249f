#!/usr/bin/env bash
# Benchmarks site-recovery's data path against restic on the same data, in the same run:
# full snapshot, incremental after 1% scattered 4 KiB writes, incremental after 1% in 256 KiB
# extents, and restore; then many small files: full snapshot, a day of churn, restore. Restores
# run with the page cache dropped first (as after a disaster; needs root, else they are marked
# warm). Prints wall time, CPU seconds, peak RSS and bytes added, with ratios, in one table.
#
#   bash bench/compare.sh [GIB] [FILES]   (defaults 4 and 100000; under $BENCH_DIR)
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
gib=${1:-4}
small=${2:-100000}
work=${BENCH_DIR:-/tmp/site-recovery-bench}
for tool in restic /usr/bin/time python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install restic time" >&2; exit 1; }
done
cargo build --release --quiet --manifest-path "$repo_root/Cargo.toml"
sr="${CARGO_TARGET_DIR:-$repo_root/target}/release/site-recovery"

rm -rf "$work" && mkdir -p "$work"
data="$work/data"
echo "generating ${gib} GiB in $data ..." >&2
python3 "$repo_root/bench/gen.py" create "$data" "$gib"
head -c 48 /dev/urandom > "$work/key"
export RESTIC_PASSWORD=benchmark RESTIC_REPOSITORY="$work/restic" SITE_RECOVERY_KEY_FILE="$work/key" SITE_RECOVERY_LOG_FORMAT=text RUST_LOG=warn
restic init --quiet >/dev/null
"$sr" repo --location "$work/sr" init >/dev/null

results="$work/results.tsv"
: > "$results"
# Drop the page cache before a restore: a restore after a disaster reads cold storage.
cold() {
  sync
  if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then return 0; fi
  echo "cannot drop the page cache (not root): this restore runs warm" >&2
  return 1
}

# measure NAME TOOL-LABEL REPO-DIR COMMAND...
measure() {
  local name=$1 label=$2 repo=$3; shift 3
  local before after
  sync  # flush earlier steps' dirty pages so that their writeback is not charged to this one
  case $name in restore*) cold || name="$name-warm" ;; esac
  before=$(du -sb "$repo" | cut -f1)
  /usr/bin/time -v -o "$work/time.txt" "$@" > "$work/out.txt" 2>&1 || { cat "$work/out.txt" >&2; exit 1; }
  after=$(du -sb "$repo" | cut -f1)
  local wall cpu rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$work/time.txt")
  cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {print u+s}' "$work/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2/1024}' "$work/time.txt")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$label" "$wall" "$cpu" "$rss" "$((after - before))" >> "$results"
  echo "$name $label: ${wall}s wall, ${cpu} CPU-s, ${rss} MiB, $((after - before)) bytes added" >&2
}

sync
measure full restic "$work/restic" restic backup --quiet "$data"
measure full site-recovery "$work/sr" "$sr" repo --location "$work/sr" snapshot --source "$data"
python3 "$repo_root/bench/gen.py" scattered "$data" 1 >&2
measure scattered restic "$work/restic" restic backup --quiet "$data"
measure scattered site-recovery "$work/sr" "$sr" repo --location "$work/sr" snapshot --source "$data"
python3 "$repo_root/bench/gen.py" clustered "$data" 1 >&2
measure clustered restic "$work/restic" restic backup --quiet "$data"
measure clustered site-recovery "$work/sr" "$sr" repo --location "$work/sr" snapshot --source "$data"
rm -rf "$work/restore-restic" "$work/restore-sr"
measure restore restic "$work/restic" restic restore latest --target "$work/restore-restic"
measure restore site-recovery "$work/sr" "$sr" repo --location "$work/sr" restore --target "$work/restore-sr"
diff -r "$data" "$work/restore-sr/" >/dev/null && echo "site-recovery restore matches the data" >&2

# Many small files in thousands of directories; then a day of churn.
files="$work/files"
echo "generating $small small files in $files ..." >&2
python3 "$repo_root/bench/gen.py" smallfiles "$files" "$small"
export RESTIC_REPOSITORY="$work/restic-files"
restic init --quiet >/dev/null
"$sr" repo --location "$work/sr-files" init >/dev/null
measure files-full restic "$work/restic-files" restic backup --quiet "$files"
measure files-full site-recovery "$work/sr-files" "$sr" repo --location "$work/sr-files" snapshot --source "$files"
python3 "$repo_root/bench/gen.py" churn "$files" 1 >&2
measure files-churn restic "$work/restic-files" restic backup --quiet "$files"
measure files-churn site-recovery "$work/sr-files" "$sr" repo --location "$work/sr-files" snapshot --source "$files"
rm -rf "$work/restore-files-restic" "$work/restore-files-sr"
measure restore-files restic "$work/restic-files" restic restore latest --target "$work/restore-files-restic"
measure restore-files site-recovery "$work/sr-files" "$sr" repo --location "$work/sr-files" restore --target "$work/restore-files-sr"
diff -r "$files" "$work/restore-files-sr/" >/dev/null && echo "site-recovery restore of the small files matches" >&2

python3 - "$results" <<'PY'
import sys, collections
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    name, tool, wall, cpu, rss, added = line.split("\t")
    rows[name][tool] = (float(wall), float(cpu), float(rss), int(added))
print(f"{'step':<18} {'tool':<14} {'wall s':>8} {'CPU s':>8} {'RSS MiB':>8} {'added MB':>10}")
order = ["full", "scattered", "clustered", "restore", "files-full", "files-churn", "restore-files"]
names = [n for o in order for n in (o, o + "-warm") if n in rows]
for name in names:
    for tool in ["restic", "site-recovery"]:
        w, c, r, a = rows[name][tool]
        print(f"{name:<18} {tool:<14} {w:>8.2f} {c:>8.2f} {r:>8.1f} {a/1e6:>10.1f}")
    rw, rc, rr, ra = rows[name]["restic"]
    sw, sc, sr, sa = rows[name]["site-recovery"]
    ratio = lambda s, r: f"{s / r:.2f}x" if r else "-"
    print(f"{'':<18} {'ratio':<14} {ratio(sw, rw):>8} {ratio(sc, rc):>8} {ratio(sr, rr):>8} {ratio(sa, ra) if not name.startswith('restore') else '-':>10}")
PY
