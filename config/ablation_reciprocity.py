# Reciprocity only: does adding S^T (the transposed score) to the attention logits help?
out_dir = 'out-ablation_reciprocity'
wandb_run_name = 'ablation_reciprocity'
use_reciprocity = True
