"""Adapters that put a manualrag index where LLM applications look for context.

* :mod:`manualrag.integrations.mcp_server`: a Model Context Protocol server (``manualrag mcp``), extra ``mcp``
* :mod:`manualrag.integrations.langchain`: a LangChain ``BaseRetriever``, extra ``langchain``
* :mod:`manualrag.integrations.llamaindex`: a LlamaIndex ``BaseRetriever``, extra ``llamaindex``

Each imports its framework at module level and, when the extra is missing, says which one to install.
"""
