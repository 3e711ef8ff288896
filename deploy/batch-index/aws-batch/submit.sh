#!/bin/sh
# Submits the map array job, then the reduce array job depending on it
# (N_TO_N is not used: every reduce job needs every map job).
set -eu
QUEUE=${QUEUE:-batch-index}
MAP_JOB_COUNT=${MAP_JOB_COUNT:-52}
REDUCE_JOB_COUNT=${REDUCE_JOB_COUNT:-52}
map_id=$(aws batch submit-job --job-name batch-index-map --job-queue "$QUEUE" \
  --job-definition batch-index-map --array-properties size="$MAP_JOB_COUNT" \
  --query jobId --output text)
aws batch submit-job --job-name batch-index-reduce --job-queue "$QUEUE" \
  --job-definition batch-index-reduce --array-properties size="$REDUCE_JOB_COUNT" \
  --depends-on jobId="$map_id" --query jobId --output text
