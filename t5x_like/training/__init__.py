"""Training: meshes and shardings, optimizers, checkpoints, metrics, the loop, and runs.

Above model/ and data/ (imports both), below inference/ and experiments/.
Modules:
  partitioning  the device mesh and the logical-axis rules table
  optimizers    Adafactor / AdamW recipes and schedules (optax)
  checkpoints/  what a run leaves beside its step folders and the one way to read it: the
                writer (orbax saves that survive a kill, with the input stream's position),
                `load_params` for every reader (also from another layout: model/adaptation.py),
                checksums, and MODEL_DIR/model_config.json
  metrics_log   console, metrics.jsonl and TensorBoard output; MFU
  trainer       TrainState, the jitted sharded steps, the loop
  guards        the rules that stop a diverged run (NaN/inf, collapse): exit 3
  run           TrainConfig and train(config): the named set-up steps
  resume        where a run starts (resume, finetune init, fresh) and its refusals
  run_dir       one run per MODEL_DIR (a lock)
  program_cache compiled steps shared by the runs of one process with the same model, shapes and optimizer
  aot           TPU slices, and compiling the train step for one on any host (`t5x-like compile`)
"""
