"""Ray Job entrypoints: `ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m jobs.<stage>
--config CONFIG [key.sub=value ...]`. Each runs one `adapt` verb inside the job, on the cluster it was submitted to."""
