module github.com/nixfarm/nixfarm

go 1.26.0

require github.com/nix-community/go-nix v0.0.0-20250101154619-4bdde671e0a1
