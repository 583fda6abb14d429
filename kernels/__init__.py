"""Kernel side of ContextLab: the %%copilot IPython extension and the ContextLab Python kernel spec."""
