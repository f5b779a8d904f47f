"""Reports: ladder tables, JSON results and self-contained HTML with plots and overlays."""
