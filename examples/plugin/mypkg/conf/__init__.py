# makes conf/ a package, so that Hydra finds it as hydra.searchpath=[pkg://mypkg.conf]
