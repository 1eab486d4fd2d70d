module github.com/rollingops/rollingops/host/go

go 1.24
