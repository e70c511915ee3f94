module benchupstream

go 1.19
