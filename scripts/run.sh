#!/usr/bin/env bash
# The main job: install, build, and train the Fashion-MNIST MLP on 4 simulated devices
# (threads of this process) with an automatic plan, printing the plan, progress and the test
# accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
exec build/frontend/tessel train --model mlp:784-1024-1024-10 --dataset fashion-mnist \
  --epochs 1 --batch 256 --optimizer sgd --lr 0.05 --momentum 0.9 --seed 1 --devices 4 --auto "$@"
