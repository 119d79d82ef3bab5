"""MLC-LLM weight directories: tensor cache, mlc-chat-config.json and what fills it.

The files written here are read unchanged by MLC-LLM's runtime and by ours: the tensor cache is
written by TVM's own ``tvm.contrib.tvmjs.dump_tensor_cache``; the chat config carries every field
MLC-LLM's ``gen_config`` writes.
"""
