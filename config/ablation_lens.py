# Lens attention: reciprocity and discoverability together, mixed by per-head softmax lens gates.
out_dir = 'out-ablation_lens'
wandb_run_name = 'ablation_lens'
use_reciprocity = True
use_discoverability = True
