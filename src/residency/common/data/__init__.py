"""Reading labelled text records from a country's own files, and the synthetic demo federation."""
