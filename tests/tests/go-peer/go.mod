module c2c/go-peer

go 1.19
