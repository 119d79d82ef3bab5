"""The deployment benchmark (the paper's Table 6): weight memory, running memory, tokens/s."""
