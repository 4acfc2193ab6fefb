"""Data: formats (TRL's column names), sources (files, `datasets` folders), records, tokenisation;
`data.loader.load_data` turns any of them into validated examples."""
