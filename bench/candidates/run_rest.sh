#!/bin/bash
# Second half (run after space run 1): load/scan/get, SIGKILL, recovery, isolated latency reruns, ENOSPC.
set -u
B="$(dirname "$0")/target/release/kvbench"
D=/tmp/kvb
OUT="$(dirname "$0")/results"
RAW=$OUT/raw2.txt
: > $RAW
log() { tee -a $RAW; }
date | log
for s in redb fjall sqlite; do
  $B load $s $D/$s-load 1000000 | log
  for run in 1 2 3; do $B scan $s $D/$s-load | log; done
  for run in 1 2 3; do $B get $s $D/$s-load 1000000 100000 | log; done
done
for s in redb redbqr fjall sqlite; do
  rm -rf $D/$s-k
  $B killtest $s $D/$s-k 10 | log
done
for s in redb fjall sqlite; do
  rm -rf $D/$s-krec; cp -r $D/$s-load $D/$s-krec; sync
  $B killtest $s $D/$s-krec 3 | sed 's/store=/big=1M store=/' | log
  rm -rf $D/$s-krec
done
$B load redbqr $D/redbqr-load 1000000 | log
rm -rf $D/redbqr-krec; cp -r $D/redbqr-load $D/redbqr-krec; sync
$B killtest redbqr $D/redbqr-krec 3 | sed 's/store=/big=1M store=/' | log
rm -rf $D/redbqr-krec $D/redbqr-load
# isolated latency reruns: sync + 3 s idle before each, stores interleaved
for run in 1 2 3; do
  for s in redb redbqr fjall sqlite; do
    sync; sleep 3
    $B latency $s $D/$s-lat2 2000 | sed 's/RESULT latency/RESULT latency_isolated/' | log
  done
done
# ENOSPC on a 24 MiB tmpfs
for s in redb fjall sqlite; do
  umount /mnt/kvfull 2>/dev/null; mkdir -p /mnt/kvfull; mount -t tmpfs -o size=24m tmpfs /mnt/kvfull
  dd if=/dev/zero of=/mnt/kvfull/ballast bs=1M count=4 status=none
  $B enospc $s /mnt/kvfull/db 2>&1 | log
  ls -la /mnt/kvfull /mnt/kvfull/db | log
  umount /mnt/kvfull
done
date | log
echo DONE | log
