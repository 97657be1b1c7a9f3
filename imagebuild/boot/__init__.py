"""What 9front's boot loaders accept: checks run on a boot partition before it is written."""
