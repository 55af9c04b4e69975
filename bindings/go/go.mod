module github.com/gacc/gacc/bindings/go

go 1.19
