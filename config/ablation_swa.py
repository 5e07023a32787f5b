# Local attention (Mistral's sliding window): every layer attends to its last 32 tokens only, plain GPT-2 otherwise. Each layer's cache is a ring of 32 positions: at context T it holds min(T, 32) tokens.
out_dir = 'out-ablation_swa'
wandb_run_name = 'ablation_swa'
attn_window = 32  # a multiple of the quantized caches' key group (32), as a ring of whole groups needs
