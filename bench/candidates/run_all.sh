#!/bin/bash
# Runs every measurement 3x per store; raw RESULT lines go to results/raw.txt
set -u
B="$(dirname "$0")/target/release/kvbench"
D=/tmp/kvb
OUT="$(dirname "$0")/results"
mkdir -p $OUT $D
RAW=$OUT/raw.txt
: > $RAW
log() { tee -a $RAW; }
{ echo "# nproc=$(nproc) uname=$(uname -r)"; df -T /tmp | tail -1; date; } | log
for run in 1 2 3; do
  for s in redb redbqr fjall sqlite; do
    $B latency $s $D/$s-lat 2000 | log
    $B group $s $D/$s-g 16 32000 | log
    $B group $s $D/$s-g 256 256000 | log
    $B group $s $D/$s-g 4096 409600 | log
  done
done
for run in 1 2 3; do
  for s in redb fjall sqlite; do
    $B space $s $D/$s-sp 1000000 1000 | sed "s/^RESULT/RESULT run=$run/" | log
    rm -rf $D/$s-sp
  done
done
for s in redb fjall sqlite; do
  $B load $s $D/$s-load 1000000 | log
  for run in 1 2 3; do $B scan $s $D/$s-load | log; done
  for run in 1 2 3; do $B get $s $D/$s-load 1000000 100000 | log; done
done
for s in redb redbqr fjall sqlite; do
  rm -rf $D/$s-k
  $B killtest $s $D/$s-k 10 | log
done
# crash recovery on a 1M-record store (copy of the loaded store)
for s in redb fjall sqlite; do
  rm -rf $D/$s-krec; cp -r $D/$s-load $D/$s-krec
  $B killtest $s $D/$s-krec 3 | sed 's/store=/big=1M store=/' | log
done
# redb with quick_repair on a 1M store: load with redbqr then kill
$B load redbqr $D/redbqr-load 1000000 | log
rm -rf $D/redbqr-krec; cp -r $D/redbqr-load $D/redbqr-krec
$B killtest redbqr $D/redbqr-krec 3 | sed 's/store=/big=1M store=/' | log
date | log
echo DONE | log
