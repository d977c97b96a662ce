"""`lstm-engine explore`: a local web page that steps a trained model through a text, live.

compute.py runs the reference backend and answers every question as plain JSON-ready data,
server.py serves it (and the page under static/) on 127.0.0.1, page.py writes a
self-contained page with the numbers baked in.  The page draws; it computes nothing.
"""
