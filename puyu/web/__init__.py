"""The browser UI (``puyu web``, ``puyu serve --web``): chat, agent and knowledge-base tabs on one page.

- :mod:`puyu.web.app`: :func:`~puyu.web.app.mount_ui` adds the page and the ``/ui`` routes to a FastAPI app;
- :mod:`puyu.web.proxy`: the UI in front of a remote OpenAI-compatible server;
- :mod:`puyu.web.agent_routes`, :mod:`puyu.web.kb_routes`: the agent and knowledge-base endpoints;
- ``static/``: the page, its scripts and styles, and the vendored Markdown renderer.
"""
