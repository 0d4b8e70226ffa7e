"""A read-only web dashboard over the warehouse views (``mm-platform dashboard``).

``queries`` aggregates and pages in SQL, ``figures`` turns the small results into Plotly
figures, ``app`` serves them with FastAPI and Jinja2 templates; plotly.js comes from the
installed plotly package, so nothing is loaded from the internet.
"""
