# Site settings for slurm/train.sbatch, sourced by the batch script before anything else
# (copy to slurm/site.sh, or point HPC_DL_SETUP at your copy). Plain bash: what it exports
# reaches every rank (srun passes the environment on, and so does `apptainer exec`).
# Nothing here is needed on the test cluster; every line is an example to adapt.

# Modules: whatever your site's documentation says a PyTorch job needs.
# module purge
# module load Stages/2025 GCC OpenMPI CUDA NCCL

# Rendezvous on the InfiniBand name of the first node, where sites name it <host>i (JUWELS).
# export HPC_DL_MASTER_SUFFIX=i

# Network interfaces, when NCCL or gloo pick the wrong ones (`ip -br addr` on a compute node).
# export NCCL_SOCKET_IFNAME=ib0        # NCCL's bootstrap and its TCP fallback
# export NCCL_IB_HCA=mlx5              # InfiniBand adapters NCCL may use
# export GLOO_SOCKET_IFNAME=ib0        # gloo (CPU collectives, hpc_dl's any-rank checks)

# The Python environment, when it is not $PROJECT/.venv.
# export VENV=/p/project/me/venvs/hpc_dl
