"""`productvlm audit`: a whole catalog's listed prices against the model (run.py: the
command; work.py: the inner loop; outputs.py: audit.csv, audit.html, audit.json)."""
