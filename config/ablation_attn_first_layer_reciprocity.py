# Placement with reciprocity: attention only in layer 0, with S^T (the recall probe's question: does one attention layer that sees both directions recall?).
out_dir = 'out-ablation_attn_first_layer_reciprocity'
wandb_run_name = 'ablation_attn_first_layer_reciprocity'
attn_layers = (0,)
use_reciprocity = True
